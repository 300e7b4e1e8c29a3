"""Placeholder: the Hugging Face config update (filled in below)."""


def update_config(module, name: str) -> None:
    return None
