"""What each model minimises: the teacher's likelihood, the distillation objective (the KL
lives here, one function for training, validation and evaluation), spectral losses."""
