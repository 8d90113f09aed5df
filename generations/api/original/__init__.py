"""The original cluster API (this cluster's own): prompts, their status, pop and submit."""
