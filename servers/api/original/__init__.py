"""The original cluster API's view of the servers: who serves which model."""
