"""Pure rules of the one-month stock duty: values in, a decision out."""
