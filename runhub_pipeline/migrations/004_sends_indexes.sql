-- Indexes for the send side (CONTRACT §7), on app tables the pipeline reads and writes every tick.
-- Only `create index if not exists`: no column or constraint of an app table changes.
-- workflow_runs by action and time: the recovery sensor's recent runs and the run cooldown.
create index if not exists workflow_runs_action_created on workflow_runs (action_id, created_at);
-- workflow_sends of one run: claims, retries, result counts, interrupted claims.
create index if not exists workflow_sends_run on workflow_sends (run_id, status);
-- workflow_sends by age: the daily retention delete.
create index if not exists workflow_sends_created on workflow_sends (created_at);
-- Digest rows left queued by a dead worker.
create index if not exists inhouse_emails_template_status
    on inhouse_emails (template_name, status, created_at);
