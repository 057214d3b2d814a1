"""Fine-tuning: LoRA adapters for `sd` trained on an imagefolder dataset, tracked in MLflow."""
