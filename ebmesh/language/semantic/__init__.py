"""The semantic checks behind `ebmesh.language.checks.check`, one module per concern."""
