package forward

import (
	"errors"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/ferry-edge/ferry/buffer"
)

// Reasons a record is dead-lettered, as counted in the buffer and shown by
// `ferry buffer dlq`.
const (
	// ReasonTooLarge: the record is larger than Config.MaxRecordBytes, or
	// Kafka refused it as too large (MESSAGE_TOO_LARGE,
	// RECORD_LIST_TOO_LARGE).
	ReasonTooLarge buffer.Reason = "message_too_large"
	// ReasonInvalidRecord: Kafka refused the record itself (INVALID_RECORD,
	// CORRUPT_MESSAGE, INVALID_TIMESTAMP).
	ReasonInvalidRecord buffer.Reason = "invalid_record"
	// ReasonInvalidTopic: the route made a topic name Kafka cannot have
	// (checked before producing), or Kafka said INVALID_TOPIC_EXCEPTION.
	ReasonInvalidTopic buffer.Reason = "invalid_topic"
	// ReasonTopicAuthorization: Kafka refused the topic to this client
	// (TOPIC_AUTHORIZATION_FAILED).
	ReasonTopicAuthorization buffer.Reason = "topic_authorization_failed"
	// ReasonPolicyViolation: a broker policy refused the record.
	ReasonPolicyViolation buffer.Reason = "policy_violation"
	// ReasonUnknownTopic: the topic did not exist for
	// Config.UnknownTopicTimeout (and auto-creation is off).
	ReasonUnknownTopic buffer.Reason = "unknown_topic"
)

// class is what the forwarder does about a failed produce.
type class int

const (
	// retry: wait with backoff and produce the record again (network,
	// leadership, quotas, authentication, anything not known below).
	// franz-go retries retriable errors itself; a record only fails with
	// one when the client is closing or gave up for a reason of its own.
	retry class = iota
	// rejectRecord: Kafka refused the batch holding the record for good;
	// the record to blame is found by bisecting and dead-lettered.
	rejectRecord
	// rejectTopic: Kafka refused the record's topic. When the record never
	// reached a partition (the refusal came with the topic's metadata),
	// every record of that topic failed for the same reason and is
	// dead-lettered; otherwise it is handled as rejectRecord.
	rejectTopic
	// missingTopic: the topic does not exist. Its records wait, retried
	// with backoff, and are dead-lettered after UnknownTopicTimeout;
	// records of other topics go on meanwhile.
	missingTopic
)

func (c class) String() string {
	switch c {
	case rejectRecord:
		return "reject-record"
	case rejectTopic:
		return "reject-topic"
	case missingTopic:
		return "missing-topic"
	}
	return "retry"
}

// classes maps the Kafka errors that are not retried to what is done about
// them and the dead-letter reason. Every other error is retried.
var classes = []struct {
	err    error
	class  class
	reason buffer.Reason
}{
	{kerr.MessageTooLarge, rejectRecord, ReasonTooLarge},
	{kerr.RecordListTooLarge, rejectRecord, ReasonTooLarge},
	{kerr.InvalidRecord, rejectRecord, ReasonInvalidRecord},
	{kerr.CorruptMessage, rejectRecord, ReasonInvalidRecord},
	{kerr.InvalidTimestamp, rejectRecord, ReasonInvalidRecord},
	{kerr.PolicyViolation, rejectRecord, ReasonPolicyViolation},
	{kerr.InvalidTopicException, rejectTopic, ReasonInvalidTopic},
	{kerr.TopicAuthorizationFailed, rejectTopic, ReasonTopicAuthorization},
	{kerr.UnknownTopicOrPartition, missingTopic, ReasonUnknownTopic},
}

// classify says what to do about a record that failed with err, and the
// dead-letter reason if it comes to that.
func classify(err error) (class, buffer.Reason) {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.class, c.reason
		}
	}
	return retry, ""
}
