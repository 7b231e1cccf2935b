"""What every hpcsync agent shares: subprocesses, ssh/rsync, HTTP, secrets, op state."""
