-- Built per chunk: the seqs marker becomes one placeholder per run seq.
DELETE FROM finished_runs WHERE seq IN ({seqs})
