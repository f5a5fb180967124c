"""VerIPO's stages and the loop that runs them: rewards, rollouts, the verifier, SFT / GRPO /
DPO / eval stages, and the run report. Import the modules themselves: the package imports
nothing, so a light reader (the report) stays light."""
