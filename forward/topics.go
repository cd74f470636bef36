package forward

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// metadataTimeout bounds checkTopics' wait for Kafka; past it the chunk
// goes out anyway and the client sorts the topics out.
const metadataTimeout = 5 * time.Second

// checkTopics asks Kafka about the topics of the chunk it has not seen
// yet, in one metadata request. A topic that does not exist is parked, one
// Kafka refuses has its records dead-lettered; either way they leave the
// chunk before it goes out. It reports whether it changed anything.
func (p *pass) checkTopics(ctx context.Context) bool {
	var topics []string
	seen := map[string]bool{}
	for _, s := range p.chunk {
		if t := s.kr.Topic; !p.known[t] && !seen[t] {
			seen[t] = true
			topics = append(topics, t)
		}
	}
	if len(topics) == 0 {
		return false
	}
	found, ok := p.lookup(ctx, topics)
	if !ok {
		return false // Kafka unreachable: produce, and let the client wait
	}
	now := time.Now()
	changed := false
	for t, kerrv := range found {
		if kerrv == nil {
			p.known[t] = true
			continue
		}
		err := fmt.Errorf("topic %q: %w", t, kerrv)
		switch class, reason := classify(kerrv); class {
		case missingTopic:
			p.park(t, err, now)
			changed = true
		case rejectTopic:
			p.deadLetterTopic(p.w.slots, t, reason, err)
			changed = true
		}
	}
	return changed
}

// lookup asks Kafka about topics in one metadata request and returns each
// topic's error (nil: it exists); ok is false if Kafka did not answer.
func (p *pass) lookup(ctx context.Context, topics []string) (found map[string]error, ok bool) {
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = p.f.cfg.AllowAutoTopicCreation
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	mctx, cancel := context.WithTimeout(ctx, metadataTimeout)
	defer cancel()
	resp, err := req.RequestWith(mctx, p.cl)
	if err != nil {
		return nil, false
	}
	found = map[string]error{}
	for _, rt := range resp.Topics {
		if rt.Topic != nil && slices.Contains(topics, *rt.Topic) {
			found[*rt.Topic] = kerr.ErrorForCode(rt.ErrorCode)
		}
	}
	return found, true
}
