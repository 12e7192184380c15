-- The pipeline's own tables in the app database: the served daily KPIs (CONTRACT §3, same columns
-- as the warehouse table) and the publish ledger that makes each window's publish exactly-once.
create table if not exists business_kpi_daily (
    project_id text not null,
    day date not null,
    sessions bigint not null,
    visitors bigint not null,
    page_views bigint not null,
    form_submissions bigint not null,
    leads bigint not null,
    checkouts_started bigint not null,
    payments_failed bigint not null,
    orders bigint not null,
    revenue_cents bigint not null,
    refunds bigint not null,
    refunded_cents bigint not null,
    net_revenue_cents bigint not null,
    conversion_rate double precision,
    abandoned_checkouts bigint not null,
    recovered_checkouts bigint not null,
    recovered_revenue_cents bigint not null,
    workflow_emails_sent bigint not null,
    currency text,
    updated_at {{ ts }} not null,
    primary key (project_id, day)
);

create table if not exists runhub_publish_log (
    published_through {{ ts }} not null,
    published_at {{ ts }} not null,
    rows_upserted bigint not null,
    rows_deleted bigint not null
);
