"""Fault injection: nothing lost, nothing sent twice, with workers, Redis and SMTP misbehaving."""
