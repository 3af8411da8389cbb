"""Hot math of the Llama block in plain torch ops, each next to a slow float64 reference."""
