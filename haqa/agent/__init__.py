"""Choosing a configuration: candidates, the rule (later the agent) that picks one, and why."""
