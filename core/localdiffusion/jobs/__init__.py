"""Jobs: the only code that reads a user's input files and writes outputs. The CLI, the MONAI bundle, the MONAI Label app and the Slicer module (through the CLI) all call these."""
