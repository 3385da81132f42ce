"""Train the bundled suite: one process per seed (resumable). See `universal-neurons zoo`."""
