#!/bin/sh
# A detector for tests that prints 5 MiB on stdout.
head -c 5242880 /dev/zero | tr '\0' 'x'
