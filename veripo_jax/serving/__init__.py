"""The verifier's judge: a JetStream server over our decoder, and its gRPC client.

Import the submodules directly: `client` is light (gRPC + protos), while `engine` and `server`
import JetStream, which pulls TensorFlow.
"""
