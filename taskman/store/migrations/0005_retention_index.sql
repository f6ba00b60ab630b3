-- Version 5: the leader prunes finished tasks by (state, finished_at) in small batches.
ALTER TABLE tasks ADD KEY tasks_finished (state, finished_at);
