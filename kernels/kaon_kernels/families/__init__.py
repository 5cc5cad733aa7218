"""The model families: one module each (`cnn`, `rnn`), looked up by name in `registry`."""
