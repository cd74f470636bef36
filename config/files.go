package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// Files is what the files a configuration names hold, read and checked by
// ReadFiles.
type Files struct {
	// MQTT holds the files of each connection, in the order of
	// Config.MQTT.
	MQTT []MQTTFiles
	// KafkaPassword is forward.kafka.sasl.password_file's, likewise.
	KafkaPassword Secret
	// KafkaRootCAs holds the certificates of forward.kafka.tls.ca_file;
	// nil without the key (the system's roots).
	KafkaRootCAs *x509.CertPool
	// KafkaCertificate is the client certificate of
	// forward.kafka.tls.cert_file with the private key of key_file; nil
	// without them.
	KafkaCertificate *tls.Certificate
}

// MQTTFiles is what the files of one MQTT connection hold.
type MQTTFiles struct {
	// Password is password_file's content less a trailing newline; ""
	// without the key.
	Password Secret
	// RootCAs and Certificate are as Files.KafkaRootCAs and
	// KafkaCertificate, for the connection's tls section.
	RootCAs     *x509.CertPool
	Certificate *tls.Certificate
}

// Limits on the files a configuration names: far above any real password or
// CA bundle, they bound the work a wrong path (a log file, a disk image)
// causes.
const (
	maxPasswordFile = 64 << 10
	maxPEMFile      = 4 << 20
)

// ReadFiles reads every file c names and checks that it holds what it must:
// a non-empty password; PEM certificates that parse; a private key that
// goes with the client certificate. The error names the key of each file
// that fails. LoadAndCheck reads the files the same way and reports the
// same problems at their keys' positions in the configuration file.
func (c *Config) ReadFiles() (*Files, error) {
	var errs []error
	path := func(i int) string { // as the file most likely gave them
		if len(c.MQTT) == 1 {
			return "mqtt"
		}
		return fmt.Sprintf("mqtt[%d]", i)
	}
	f := readFiles(c, path, func(key string, err error) { errs = append(errs, fmt.Errorf("%s: %w", key, err)) })
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f, nil
}

// readFiles reads the files c names, calling bad for each key whose file
// fails, and returns what the others hold.
func readFiles(c *Config, mqttPath func(i int) string, bad func(key string, err error)) *Files {
	var f Files
	f.MQTT = make([]MQTTFiles, len(c.MQTT))
	for i, m := range c.MQTT {
		p, mf := mqttPath(i), &f.MQTT[i]
		if path := m.PasswordFile; path != "" {
			pw, err := readPassword(path)
			if err != nil {
				bad(p+".password_file", err)
			}
			mf.Password = pw
		}
		mf.RootCAs, mf.Certificate = readTLSFiles(p+".tls", m.TLS.CAFile, m.TLS.CertFile, m.TLS.KeyFile, bad)
	}
	if path := c.Forward.Kafka.SASL.PasswordFile; path != "" {
		pw, err := readPassword(path)
		if err != nil {
			bad("forward.kafka.sasl.password_file", err)
		}
		f.KafkaPassword = pw
	}
	k := c.Forward.Kafka.TLS
	f.KafkaRootCAs, f.KafkaCertificate = readTLSFiles("forward.kafka.tls", k.CAFile, k.CertFile, k.KeyFile, bad)
	return &f
}

// readTLSFiles reads the CA file and the client certificate and key of the
// tls section at key (each "" if not given), calling bad for each that
// fails.
func readTLSFiles(key, caFile, certFile, keyFile string, bad func(key string, err error)) (*x509.CertPool, *tls.Certificate) {
	var (
		pool *x509.CertPool
		cert *tls.Certificate
	)
	if caFile != "" {
		_, certs, err := readCertificates(caFile)
		if err != nil {
			bad(key+".ca_file", err)
		} else {
			pool = x509.NewCertPool()
			for _, c := range certs {
				pool.AddCert(c)
			}
		}
	}
	if certFile != "" && keyFile != "" {
		certPEM, _, certErr := readCertificates(certFile)
		if certErr != nil {
			bad(key+".cert_file", certErr)
		}
		keyPEM, err := readFile(keyFile, maxPEMFile)
		switch {
		case err != nil:
			bad(key+".key_file", err)
		case certErr == nil:
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				bad(key+".key_file", fmt.Errorf("%s is not the key of cert_file %s: %w", keyFile, certFile, err))
			} else {
				cert = &pair
			}
		}
	}
	return pool, cert
}

// readPassword reads a password file: its content less a trailing newline,
// which must leave a password.
func readPassword(path string) (Secret, error) {
	b, err := readFile(path, maxPasswordFile)
	if err != nil {
		return "", err
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("%s is empty; it must hold the password", path)
	}
	return Secret(pw), nil
}

// readCertificates reads a PEM file that must hold at least one
// certificate, and every certificate in it must parse; blocks of other types
// are skipped. It returns the file's content and its certificates.
func readCertificates(path string) ([]byte, []*x509.Certificate, error) {
	data, err := readFile(path, maxPEMFile)
	if err != nil {
		return nil, nil, err
	}
	var certs []*x509.Certificate
	var others []string
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			if !slices.Contains(others, block.Type) {
				others = append(others, block.Type)
			}
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: certificate %d does not parse: %w", path, len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		if len(others) > 0 {
			return nil, nil, fmt.Errorf("%s holds no PEM certificate (it holds %s)", path, strings.Join(others, ", "))
		}
		return nil, nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return data, certs, nil
}

// readFile reads a regular file of at most limit bytes.
func readFile(path string, limit int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, cannotRead(path, err)
	}
	switch {
	case fi.IsDir():
		return nil, fmt.Errorf("%s is a directory, not a file", path)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	case fi.Size() > limit:
		return nil, fmt.Errorf("%s is %d bytes; at most %v is read", path, fi.Size(), ByteSize(limit))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, cannotRead(path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, cannotRead(path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is more than %v; at most %v is read", path, ByteSize(limit), ByteSize(limit))
	}
	return b, nil
}

// cannotRead words a file error as "cannot read PATH: why", keeping the
// cause for errors.Is.
func cannotRead(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cannot read %s: %w", path, err)
}
