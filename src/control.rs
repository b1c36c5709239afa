//! Local control socket between `hotline serve` and the other subcommands.
