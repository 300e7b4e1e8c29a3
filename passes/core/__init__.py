"""The pass infrastructure: the contract a pass declares, its options, the pipeline that runs passes, the registry that names them and the recipes that spell pipelines in YAML."""
