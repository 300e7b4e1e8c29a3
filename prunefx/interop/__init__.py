"""Hand-off to the user's own tools: write-back into their modules, Hugging Face configs, Ultralytics, module files and recovery in their loops."""
