"""Fine-tuning Hugging Face causal LMs with LoRA (PEFT) on the loop of `ml_playground.train`."""
