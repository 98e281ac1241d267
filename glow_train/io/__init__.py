"""What goes to disk: the checkpoint file format (`checkpoint`) and the output policy
every command follows (`outputs`: where files go, what may be replaced, atomic writes)."""
