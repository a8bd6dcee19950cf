"""Restore drills: backups proven restorable on a schedule, with evidence (README, "Restore drills")."""
