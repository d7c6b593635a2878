-- Where each evaluation ran: figures measured on one device, compute dtype
-- and load-time quantization are not reused for another. Rows from before
-- this migration have NULLs and are never reused.
ALTER TABLE evals ADD COLUMN device TEXT;
ALTER TABLE evals ADD COLUMN dtype TEXT;
ALTER TABLE evals ADD COLUMN quant TEXT;
