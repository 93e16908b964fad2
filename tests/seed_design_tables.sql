-- The four tables of ../shared/SEED_DESIGN.md, copied verbatim (tests/test_seed_design.py checks the copy
-- against the design when it is there, and that SQL written against these definitions runs on our schema).

CREATE TABLE command_log (
  id SERIAL PRIMARY KEY,
  task_id TEXT REFERENCES tasks(id),
  executed_at TIMESTAMP DEFAULT NOW(),
  prompt TEXT,
  response TEXT,
  command TEXT,
  permissions TEXT,
  user_confirmation BOOLEAN,
  agent_mode TEXT -- 'interactive', 'agentic', etc.
);

CREATE TABLE command_output (
  id SERIAL PRIMARY KEY,
  command_log_id INT REFERENCES command_log(id),
  stdout TEXT,
  stderr TEXT,
  return_code INT,
  file_written TEXT,
  success BOOLEAN
);

CREATE TABLE project_files (
  id SERIAL PRIMARY KEY,
  task_id TEXT REFERENCES tasks(id),
  path TEXT,
  content TEXT,
  last_updated TIMESTAMP DEFAULT NOW()
);

CREATE TABLE knowledge (
  id SERIAL PRIMARY KEY,
  task_id TEXT REFERENCES tasks(id),
  fact_label TEXT,
  fact_value TEXT,
  extracted_from TEXT, -- file, command, prompt, etc.
  confidence_score NUMERIC,
  inserted_at TIMESTAMP DEFAULT NOW()
);
