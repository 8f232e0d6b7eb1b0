"""Raw datasets: the release registry with checksums and mirrors (``rawdata.registry``), generators of every raw format with planted structure (``rawdata.synth``), and the NCF train-file rebuild."""
