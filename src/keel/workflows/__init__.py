"""Amazon States Language definitions executed as durable DBOS workflows."""
