"""Auto-remediation: route service traffic with canaries, detect an error spike, clone the
database, let a model propose a patch plus a regression test, prove it in a sandbox,
canary it, and wait for a human to ship it."""
