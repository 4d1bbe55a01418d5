"""The net: the Model contract and the runner's Net, its layer-name scheme, its weights as files."""
