"""Where a job runs: the process layout and collectives (`distributed`), SLURM/submitit
rank discovery (`cluster`), numeric precision and what `auto` resolves to (`precision`),
and the CPU allocator setting (`memory`)."""
