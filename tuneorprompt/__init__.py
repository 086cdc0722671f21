"""tuneorprompt: should you improve the prompt or fine-tune? Every approach under one fair protocol."""

__version__ = "0.1.0"
__all__ = ["run_experiment", "Result", "ExperimentConfig", "load_config"]


def __getattr__(name: str):
    # Lazy: `import tuneorprompt` stays light; torch and transformers load on first use.
    if name in ("run_experiment", "Result"):
        from tuneorprompt import experiment

        return getattr(experiment, name)
    if name in ("ExperimentConfig", "load_config"):
        from tuneorprompt import config

        return getattr(config, name)
    raise AttributeError(f"module 'tuneorprompt' has no attribute {name!r}")
