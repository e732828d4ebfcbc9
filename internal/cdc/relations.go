package cdc

import (
	"context"
	"fmt"
	"strings"
)

// Relation is a table as the stream last described it. The stream replaces
// it whenever PostgreSQL sends a new RelationMessage (after ALTER TABLE, and
// at the start of every session), so column positions are never assumed:
// look columns up by name.
type Relation struct {
	ID        uint32
	Namespace string
	Name      string
	// ReplicaIdentity is 'd' (default), 'n' (nothing), 'f' (full) or 'i'
	// (index).
	ReplicaIdentity byte
	Columns         []Column

	index    map[string]int
	decoders []decodeFunc
}

// Column is one column of a Relation.
type Column struct {
	Name string
	// TypeOID is the column's type; domains keep their own OID.
	TypeOID uint32
	TypeMod int32
	// BaseTypeOID is the type its values decode as: a domain's base
	// type, else TypeOID. It is set when the stream stores the relation
	// (NewRelation copies TypeOID when it is zero).
	BaseTypeOID uint32
	// Key reports whether the column is part of the replica identity.
	Key bool
}

// QualifiedName is schema.table.
func (rel *Relation) QualifiedName() string { return rel.Namespace + "." + rel.Name }

// Index returns the position of the named column.
func (rel *Relation) Index(column string) (int, bool) {
	i, ok := rel.index[column]
	return i, ok
}

// TypeLoader resolves type OIDs that are not built in (enums, domains,
// arrays of them) from the catalog. The stream calls it when a relation
// arrives with such a column.
type TypeLoader interface {
	LoadType(ctx context.Context, oid uint32) (TypeInfo, error)
}

// TypeInfo is what the catalog says about a type.
type TypeInfo struct {
	OID  uint32
	Name string
	// Kind is pg_type.typtype: b base, d domain, e enum, c composite,
	// r range, m multirange, p pseudo.
	Kind byte
	// BaseOID is the base type of a domain.
	BaseOID uint32
	// ElemOID is the element type of an array (0 otherwise).
	ElemOID uint32
	// Delimiter separates array elements (',' except for box).
	Delimiter byte
}

// relations is the stream's relation cache and type registry.
type relations struct {
	byID   map[uint32]*Relation
	types  *typeRegistry
	loader TypeLoader
}

func newRelations(loader TypeLoader) *relations {
	return &relations{byID: make(map[uint32]*Relation), types: newTypeRegistry(), loader: loader}
}

// put stores a relation, replacing an earlier one with the same ID, after
// resolving the types of its columns.
func (r *relations) put(ctx context.Context, rel *Relation) error {
	rel.index = make(map[string]int, len(rel.Columns))
	rel.decoders = make([]decodeFunc, len(rel.Columns))
	for i, c := range rel.Columns {
		rel.index[c.Name] = i
		if err := r.types.ensure(ctx, r.loader, c.TypeOID); err != nil {
			return fmt.Errorf("relation %s column %s: %w", rel.QualifiedName(), c.Name, err)
		}
		rel.decoders[i] = r.types.decoder(c.TypeOID)
		rel.Columns[i].BaseTypeOID = r.types.resolve(c.TypeOID)
	}
	r.byID[rel.ID] = rel
	return nil
}

func (r *relations) get(id uint32) (*Relation, bool) {
	rel, ok := r.byID[id]
	return rel, ok
}

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteQualified quotes schema.table (or table) for SQL.
func quoteQualified(name string) string {
	schema, table, ok := strings.Cut(name, ".")
	if !ok {
		return quoteIdent(name)
	}
	return quoteIdent(schema) + "." + quoteIdent(table)
}

// NewRelation builds a Relation outside a stream, for tests and tools
// that construct changes by hand. Its values are taken as given.
func NewRelation(id uint32, namespace, name string, identity byte, columns []Column) *Relation {
	rel := &Relation{ID: id, Namespace: namespace, Name: name, ReplicaIdentity: identity, Columns: columns, index: make(map[string]int, len(columns))}
	for i, c := range columns {
		rel.index[c.Name] = i
		if c.BaseTypeOID == 0 {
			rel.Columns[i].BaseTypeOID = c.TypeOID
		}
	}
	return rel
}
