//! The shared store suite against a real PostgreSQL server (a fresh database per test).

mod common;

store_suite!(common::TestDb::postgres;
    create_assigns_metadata_and_refuses_duplicates,
    list_filters_by_kind_namespace_and_labels,
    updates_use_optimistic_concurrency_and_generations,
    delete_honours_finalizers,
    delete_cascades_to_dependents,
    events_fold_repeats,
    watch_resumes_without_gaps_or_duplicates,
    watch_from_a_compacted_revision_is_expired,
    concurrent_updates_lose_nothing,
    concurrent_writers_watch_sees_everything_in_order,
    compactor_trims_the_change_log,
);
