-- Warehouse tables owned by ingestion and staging (CONTRACT §4-5). Idempotent: `runhub` runs it
-- before every write. Marts create their own tables in their own models.

-- Source rows exactly as read, one copy per row, replaced window by window. Every column but the
-- primary key and received_at is kept as text: the pipeline never trusts these values.
create table if not exists raw_business_events (
    id bigint not null,
    ingest_window_start timestamptz not null,
    received_at timestamptz not null,
    project_id varchar,
    event_type varchar,
    occurred_at varchar,
    idempotency_key varchar,
    actor_email varchar,
    session_id varchar,
    amount_cents varchar,
    currency varchar,
    payload varchar
);

create table if not exists raw_analytics_events (
    id bigint not null,
    ingest_window_start timestamptz not null,
    received_at timestamptz not null,
    project_id varchar,
    event_name varchar,
    session_id varchar,
    anonymous_id varchar,
    path varchar,
    occurred_at varchar
);

-- Every business event that passed quarantine, duplicates included: the pool from which the
-- earliest (received_at, id) copy of each idempotency key is chosen across windows.
create table if not exists int_business_events_passed (
    event_id bigint not null,
    ingest_window_start timestamptz not null,
    received_at timestamptz not null,
    project_id varchar not null,
    event_type varchar not null,
    occurred_at timestamptz not null,
    idempotency_key varchar,
    actor_email varchar,
    email_norm varchar,
    session_id varchar,
    amount_cents bigint,
    currency varchar,
    payload json
);

create table if not exists stg_business_events (
    event_id bigint not null,
    ingest_window_start timestamptz not null,
    received_at timestamptz not null,
    project_id varchar not null,
    event_type varchar not null,
    occurred_at timestamptz not null,
    idempotency_key varchar,
    actor_email varchar,
    email_norm varchar,
    session_id varchar,
    amount_cents bigint,
    currency varchar,
    payload json
);

create table if not exists stg_analytics_events (
    event_id bigint not null,
    ingest_window_start timestamptz not null,
    received_at timestamptz not null,
    project_id varchar not null,
    event_name varchar,
    session_id varchar not null,
    anonymous_id varchar,
    path varchar,
    occurred_at timestamptz not null
);

create table if not exists quarantined_events (
    source_table varchar not null,
    source_id bigint not null,
    project_id varchar,
    reason varchar not null,
    raw json not null,
    ingest_window_start timestamptz not null
);

create table if not exists stg_projects (
    project_id varchar not null,
    name varchar,
    timezone varchar not null,
    timezone_raw varchar,
    is_timezone_valid boolean not null,
    currency varchar,
    locale varchar,
    locale_norm varchar not null,
    owner_email varchar,
    digest_enabled boolean,
    digest_hour integer,
    digest_next_at timestamptz,
    auto_recover_abandoned boolean,
    stripe_connected boolean,
    tracking_installed boolean,
    forms_count integer,
    created_at timestamptz
);

-- Per ingest window and source table: what was read and where every row went.
-- source_rows = staged + duplicates + quarantined (a check recounts it from the app database).
create table if not exists ingest_ledger (
    source_table varchar not null,
    window_start timestamptz not null,
    source_rows bigint not null,
    staged bigint not null,
    duplicates bigint not null,
    quarantined bigint not null,
    ingested_at timestamptz not null,
    staged_at timestamptz
);

-- Staged events that appeared or disappeared, in the order staging wrote them: marts recompute
-- exactly the (project, local day) pairs these touch. occurred_at NULL means the whole project
-- (its time zone or currency changed).
create table if not exists stg_changes (
    change_seq bigint not null,
    source_table varchar not null,
    project_id varchar not null,
    occurred_at timestamptz
);

-- How far each mart has consumed stg_changes, and the watermark it last computed at.
create table if not exists mart_progress (
    mart varchar not null,
    change_seq bigint not null,
    watermark timestamptz
);

-- Copies of the small app tables, brought up to date on every ingest, every column as text.
create table if not exists raw_projects (
    project_id varchar, name varchar, timezone varchar, currency varchar, locale varchar,
    owner_email varchar, digest_enabled varchar, digest_hour varchar, digest_next_at varchar,
    auto_recover_abandoned varchar, stripe_connected varchar, tracking_installed varchar,
    forms_count varchar, created_at varchar
);

create table if not exists raw_workflow_runs (
    id varchar, project_id varchar, action_id varchar, status varchar, idempotency_key varchar,
    params varchar, attempts varchar, lease_owner varchar, lease_expires_at varchar,
    created_at varchar, started_at varchar, completed_at varchar, result varchar, error varchar
);

create table if not exists raw_inhouse_emails (
    id varchar, project_id varchar, template_name varchar, locale varchar, to_email varchar,
    subject varchar, status varchar, idempotency_key varchar, created_at varchar,
    sent_at varchar, error varchar
);

-- Per small app table copied above, the PostgreSQL snapshot horizon (`pg_snapshot_xmin`) of its
-- last read: the next ingest reads only rows written by transactions at or past it
-- (assets/ingest.py). Written in the same transaction as the rows.
create table if not exists source_read_horizons (
    source_table varchar primary key,
    xmin_horizon bigint not null
);
