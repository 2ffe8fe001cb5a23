"""Where instances run. `local` (processes on this host) is the one provider so far."""
