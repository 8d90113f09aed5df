"""The original cluster API's account endpoints: usage and contributions."""
