"""Pre-trained backbones: where a model name points (the bundled MiniLM, SmolLM2's GGUF, a folder, a hub
id) and loading it, mean pooling, LoRA adapters, and the last layer computed for [CLS] only. Task-neutral
building blocks for task types and fitting.

May import: config.
"""
