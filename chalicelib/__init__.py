"""pg-lifeboat: PostgreSQL backups and restores on AWS. All logic lives here; app.py only wires it."""
