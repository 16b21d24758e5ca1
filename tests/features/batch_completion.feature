Feature: Batch completion tracking
  The nightly lead-generation batch records its progress in a tracker file as it runs.
  The tracker says whether the batch completed by its deadline: the first 05:00 in
  America/New_York strictly after the batch started. Times below are New York local time.

  Background:
    Given a tracker with the stages scrape, enrich, score and a deadline of 05:00 America/New_York

  Scenario: A batch starts, reports its stages and ends
    When a batch starts at 2026-06-01 01:00
    And at 2026-06-01 01:40 stage scrape reports 100 percent
    And at 2026-06-01 02:10 stage enrich reports 50 percent
    Then the batch is running at 50 percent complete
    And stage scrape reached 100 percent at 2026-06-01 01:40
    When at 2026-06-01 02:40 stage enrich reports 100 percent
    And at 2026-06-01 03:00 stage score reports 100 percent
    And at 2026-06-01 03:15 the batch ends
    Then the batch is completed at 100 percent complete
    And the batch took 135 minutes

  Scenario: A batch that completes before its deadline is on time
    Given a batch starts at 2026-06-01 01:00
    When at 2026-06-01 04:30 the batch ends
    Then at 2026-06-01 05:30 the check is ok saying "completed on time"
    And the batch is on time

  Scenario: A batch still running after its deadline is late
    Given a batch starts at 2026-06-01 01:00
    When at 2026-06-01 03:00 stage scrape reports 100 percent
    Then at 2026-06-01 04:59 the check is ok saying "running, 33% complete"
    And at 2026-06-01 05:25 the check reports a problem mentioning "missed its deadline"
    And at 2026-06-01 05:25 the check reports a problem mentioning "by 25 min"

  Scenario: A batch that completes after its deadline is reported late
    Given a batch starts at 2026-06-01 01:00
    When at 2026-06-01 06:10 the batch ends
    Then at 2026-06-01 06:15 the check reports a problem mentioning "completed 1 h 10 min late"

  Scenario: A failed batch is reported with its stage and reason
    Given a batch starts at 2026-06-01 01:00
    When at 2026-06-01 02:00 the batch fails at stage enrich with reason "exit code 3"
    Then at 2026-06-01 02:05 the check reports a problem mentioning "failed at stage enrich: exit code 3"

  Scenario: A night with no batch is reported missing
    Given a batch starts at 2026-06-01 01:00
    And at 2026-06-01 03:00 the batch ends
    Then at 2026-06-02 04:59 the check is ok saying "completed on time"
    And at 2026-06-02 05:10 the check reports a problem mentioning "no batch started before the deadline 2026-06-02 05:00 EDT"

  Scenario: A missing tracker file is a fresh start
    Given no tracker file exists
    Then the status shows no batch and a readable tracker
    When a batch starts at 2026-06-01 01:00
    Then the tracker file exists
    And the batch is running at 0 percent complete

  Scenario: A corrupt tracker file is moved aside and a fresh state started
    Given the tracker file contains "{not json"
    Then the status reports the tracker as unreadable
    And the tracker file is unchanged
    When a batch starts at 2026-06-01 01:00
    Then the corrupt file was moved aside as "batch_tracker.json.corrupt-20260601T050000Z"
    And the status shows the file was recovered from corruption
    And the batch is running at 0 percent complete

  Scenario Outline: Deadlines on the spring-forward day (2026-03-08, 02:00 EST -> 03:00 EDT)
    Given a deadline of <deadline> America/New_York
    When a batch starts at <start>
    Then the batch's deadline is <utc> UTC and <local> local time

    Examples:
      | deadline | start            | utc                       | local                     |
      | 05:00    | 2026-03-08 00:30 | 2026-03-08T09:00:00+00:00 | 2026-03-08T05:00:00-04:00 |
      | 05:00    | 2026-03-07 22:00 | 2026-03-08T09:00:00+00:00 | 2026-03-08T05:00:00-04:00 |
      | 02:30    | 2026-03-08 00:30 | 2026-03-08T07:00:00+00:00 | 2026-03-08T03:00:00-04:00 |

  Scenario Outline: Deadlines on the fall-back day (2026-11-01, 02:00 EDT -> 01:00 EST)
    Given a deadline of <deadline> America/New_York
    When a batch starts at <start>
    Then the batch's deadline is <utc> UTC and <local> local time

    Examples:
      | deadline | start            | utc                       | local                     |
      | 05:00    | 2026-11-01 00:30 | 2026-11-01T10:00:00+00:00 | 2026-11-01T05:00:00-05:00 |
      | 05:00    | 2026-10-31 22:00 | 2026-11-01T10:00:00+00:00 | 2026-11-01T05:00:00-05:00 |
      | 01:30    | 2026-11-01 00:30 | 2026-11-01T05:30:00+00:00 | 2026-11-01T01:30:00-04:00 |
