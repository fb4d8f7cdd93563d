-- Plan every execution for the parameters and table sizes of now: a plan
-- cached while the tables were small (a fresh deployment) would scan them
-- whole once they have grown, until an autovacuum analyze invalidated it.
SET plan_cache_mode = force_custom_plan
