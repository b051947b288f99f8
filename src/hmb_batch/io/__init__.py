"""Reading and writing files: the input contracts, the extract, the reference data, output files."""
