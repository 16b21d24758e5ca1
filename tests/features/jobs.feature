Feature: Many jobs, each on its own schedule
  One installation watches several jobs from a jobs file (BATCH_JOBS_FILE): a daily
  New York job that must start by 01:30, a weekly Saturday job in Sydney and a daily
  Berlin job. Each job keeps its own tracker file and alerts its own people; nights
  a job does not run, skips and pauses raise no alert. Times below are UTC; mail goes
  to a real SMTP server on 127.0.0.1 and the clock is injected.

  Background:
    Given the jobs nightly, weekly-rescore and eu-export, watched since 2026-10-30 12:00

  Scenario: A weekly job is missing on its day only, and only its people hear of it
    When the monitors check every hour from 2026-10-30 13:00 to 2026-11-06 23:00
    Then the e-mails to "Data Team <data@example.com>" are
      | subject                                                                                   |
      | [MISSING] no weekly-rescore batch started before the 12:00 AEDT deadline (Sat 2026-10-31) |
    And job eu-export was alerted missing 7 times, once a night

  Scenario: A skipped night and a pause raise no alert
    Given job eu-export skips 2026-10-31 because "maintenance"
    And job nightly is paused until 2026-11-02T00:00:00-05:00 because "freeze"
    And job weekly-rescore skips 2026-10-31 because "no new data"
    When the monitors check every hour from 2026-10-30 13:00 to 2026-10-31 23:00
    Then no e-mail has been sent
    And the status of job eu-export lists 2026-10-31 as skipped because "maintenance"
    And the status of job nightly shows a pause because "freeze"

  Scenario: A late start is alerted once and recovers when the batch starts
    Given job eu-export skips 2026-10-31 because "maintenance"
    And job weekly-rescore skips 2026-10-31 because "no new data"
    When the monitors check every 10 minutes from 2026-10-30 13:00 to 2026-10-31 05:50
    And job nightly starts at 2026-10-31 05:55
    And the monitors check every 10 minutes from 2026-10-31 06:00 to 2026-10-31 07:00
    Then the e-mails sent are
      | to                 | subject                                                                               |
      | oncall@example.com | [LATE START] no nightly batch started by 01:30 EDT for the 05:00 EDT deadline (Sat 2026-10-31) |
      | oncall@example.com | [RECOVERED] nightly LATE START: batch nightly-1 started at 2026-10-31 01:55 EDT, 25 min after the start-by time 2026-10-31 01:30 EDT |
