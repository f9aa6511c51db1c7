"""The durable workflow engine adapter (DBOS): one workflow per event, id = event uuid."""
