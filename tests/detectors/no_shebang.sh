# A detector for tests without a first "#!" line: exec refuses it (ENOEXEC).
echo "{}"
