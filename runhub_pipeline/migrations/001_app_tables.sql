-- The app-owned tables of CONTRACT §3. `create table if not exists` only: in production the app
-- owns these tables and `runhub init` never alters one that exists.
-- Shape only: {{ ts }}, {{ json }}, {{ bool }} and {{ now }} are dialect type names, never data.
create table if not exists projects (
    project_id text primary key,
    name text,
    timezone text default 'UTC',
    currency text default 'USD',
    locale text default 'en',
    owner_email text,
    digest_enabled {{ bool }} default {{ true }},
    digest_hour smallint default 8,
    digest_next_at {{ ts }},
    auto_recover_abandoned {{ bool }} default {{ false }},
    stripe_connected {{ bool }},
    tracking_installed {{ bool }},
    forms_count integer,
    created_at {{ ts }}
);

create table if not exists business_events (
    id {{ bigint_pk }},
    project_id text,
    event_type text,
    occurred_at {{ ts }},
    received_at {{ ts }} not null default {{ now }},
    idempotency_key text,
    actor_email text,
    session_id text,
    amount_cents bigint,
    currency text,
    payload {{ json }}
);
create index if not exists business_events_received_at on business_events (received_at);
create index if not exists business_events_idempotency
    on business_events (project_id, idempotency_key);

create table if not exists inhouse_analytics_events (
    id {{ bigint_pk }},
    project_id text,
    event_name text,
    session_id text,
    anonymous_id text,
    path text,
    occurred_at {{ ts }},
    received_at {{ ts }} not null
);
create index if not exists inhouse_analytics_events_received_at
    on inhouse_analytics_events (received_at);

create table if not exists workflow_runs (
    id text primary key,
    project_id text,
    action_id text,
    status text,
    idempotency_key text,
    params {{ json }},
    attempts integer default 0,
    lease_owner text,
    lease_expires_at {{ ts }},
    created_at {{ ts }},
    started_at {{ ts }},
    completed_at {{ ts }},
    result {{ json }},
    error text,
    unique (project_id, idempotency_key)
);
create index if not exists workflow_runs_status on workflow_runs (status, created_at);

create table if not exists workflow_sends (
    id {{ bigint_pk }},
    project_id text,
    run_id text,
    action_id text,
    email text,
    status text,
    idempotency_key text unique,
    created_at {{ ts }},
    sent_at {{ ts }},
    error text
);
create index if not exists workflow_sends_recipient on workflow_sends (project_id, email, created_at);

create table if not exists inhouse_email_suppressions (
    project_id text,
    email text,
    reason text,
    created_at {{ ts }},
    primary key (project_id, email)
);

create table if not exists inhouse_emails (
    id {{ bigint_pk }},
    project_id text,
    template_name text,
    locale text,
    to_email text,
    subject text,
    status text,
    idempotency_key text unique,
    created_at {{ ts }},
    sent_at {{ ts }},
    error text
);
