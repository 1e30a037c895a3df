"""The `graphc` command (`main.py`): dump and draw every stage, the registries (`stages.py`,
`main.py`), and exported libraries from the shell (`exported.py`: compile, info, run)."""
