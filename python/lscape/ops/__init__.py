"""One module per kernel family: input checks, backend dispatch and autograd Functions."""
