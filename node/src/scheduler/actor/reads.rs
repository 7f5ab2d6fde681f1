//! The actor's read side: statuses and evidence, of jobs in memory and of finished
//! jobs read back from the database.

use super::*;

impl Actor {
    /// A finished job read back from the database (with the trust counters this
    /// node remembers for it).
    pub(super) async fn read_finished(&self, id: JobId) -> Option<Job> {
        let read = self
            .db(move |db| match db.job(id)? {
                Some(row) => rows::read_job(db, row).map(Some),
                None => Ok(None),
            })
            .await;
        match read {
            Ok(Some(mut job)) => {
                job.trust = self.finished_trust.0.get(&id).copied().unwrap_or_default();
                Some(job)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot read a finished job");
                None
            }
        }
    }

    pub(super) fn status_of(&self, job: &Job) -> JobStatus {
        report::status(job, &|p| self.state.standing(p))
    }

    /// Status of one job, or of all (finished ones read from the database).
    pub(super) async fn statuses(&self, id: Option<JobId>) -> Vec<JobStatus> {
        if let Some(id) = id {
            return match self.state.jobs.get(&id) {
                Some(job) => vec![self.status_of(job)],
                None => self
                    .read_finished(id)
                    .await
                    .map(|job| self.status_of(&job))
                    .into_iter()
                    .collect(),
            };
        }
        let read = self
            .db(|db| rows::read_jobs(db, &[JobState::Done, JobState::Failed, JobState::Cancelled]))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read finished jobs");
                Vec::new()
            });
        let mut all: Vec<(JobId, JobStatus)> = self
            .state
            .jobs
            .values()
            .map(|j| (j.id, self.status_of(j)))
            .collect();
        for mut job in read {
            if self.state.jobs.contains_key(&job.id) {
                continue;
            }
            job.trust = self
                .finished_trust
                .0
                .get(&job.id)
                .copied()
                .unwrap_or_default();
            all.push((job.id, self.status_of(&job)));
        }
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Every disagreement of a job, with each answer read from the database.
    pub(super) async fn evidence(&self, id: JobId) -> Option<Vec<ChunkEvidence>> {
        let loaded;
        let job = match self.state.jobs.get(&id) {
            Some(job) => job,
            None => {
                loaded = self.read_finished(id).await?;
                &loaded
            }
        };
        let chunks = report::evidence_chunks(job, &|p| self.state.standing(p));
        let wanted = chunks.clone();
        let rows = self
            .db(move |db| db.replicas_of_chunks(id, &wanted))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read replicas for evidence");
                Vec::new()
            });
        Some(report::evidence(job, &chunks, rows))
    }
}
